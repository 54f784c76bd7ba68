"""Frees the placement group of a Ray Train run whose controller died without shutting down.

A multi-worker trial runs a TorchTrainer inside its Tune trial. Tune stops such a trial while the
trainer's controller may still run (after the last epoch's report, or when ASHA stops it): the
controller dies with the trial's actor, and the placement group it reserved for its workers stays
reserved until the driver's job ends (Ray keeps a group made by a non-detached actor for its
job). Ray Train's own cleaner asks the State API whether the controller lives; that fails without
a dashboard, and inside a Ray worker whenever a second Ray instance runs on the machine ("Found
multiple active Ray instances"), so the group's CPUs stayed taken and the next multi-worker trial
timed out waiting for its workers. ``PlacementGroupReaper`` asks the controller itself instead.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import ray
from ray.train.v2._internal.execution.callback import WorkerGroupCallback

if TYPE_CHECKING:
    from ray.train.v2._internal.execution.worker_group import WorkerGroup
    from ray.util.placement_group import PlacementGroup

logger = logging.getLogger(__name__)

#: How often the reaper looks at the group and asks whether the controller still lives.
CHECK_INTERVAL_S = 1.0
#: How long a live but busy controller may take to answer before the next check.
ANSWER_TIMEOUT_S = 30.0
#: The head node's built-in resource: the reaper outlives any worker node that is lost.
HEAD_NODE_RESOURCE = "node:__internal_head__"


class PlacementGroupReaper:
    """A detached actor watching one placement group of a Train run: it removes the group when
    the run's controller is gone and the group is still there, and ends once the group is gone.

    Everything it needs comes with its creation (which Ray carries out even when the creating
    controller dies right after asking), and it watches from a thread of its own: no call from
    the controller has to reach it.
    """

    def __init__(self, controller: Any, group: "PlacementGroup") -> None:
        self._controller = controller
        self._group = group
        threading.Thread(target=self._watch, name="facefuse-placement-group-reaper",
                         daemon=True).start()

    def _group_gone(self) -> bool:
        return ray.util.placement_group_table(self._group).get("state") in (None, "REMOVED")

    def _controller_alive(self) -> bool:
        try:
            ray.get(self._controller.__ray_ready__.remote(), timeout=ANSWER_TIMEOUT_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
            return True  # alive but busy, or out of reach for now: ask again
        except ray.exceptions.RayActorError:
            return False
        return True

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_INTERVAL_S)
            if self._group_gone():
                break  # the controller shut its worker group down itself
            if not self._controller_alive():
                if not self._group_gone():
                    logger.warning("the Ray Train controller of placement group %s died without "
                                   "shutting down; removing the group so its resources are free "
                                   "again", self._group.id.hex())
                    ray.util.remove_placement_group(self._group)
                break
        ray.kill(ray.get_runtime_context().current_actor)


class ReapOnControllerLoss(WorkerGroupCallback):
    """Ray Train callback: gives each worker group's placement group a ``PlacementGroupReaper``."""

    def after_worker_group_start(self, worker_group: "WorkerGroup") -> None:
        group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        # DEFAULT scheduling: not inside the placement group of the Tune trial that runs
        # this controller (its bundle has no head-node resource, and the trial's fate is the
        # very thing the reaper must outlive).
        ray.remote(PlacementGroupReaper).options(
            num_cpus=0, lifetime="detached", resources={HEAD_NODE_RESOURCE: 0.001},
            scheduling_strategy="DEFAULT",
        ).remote(ray.get_runtime_context().current_actor, group)
