"""The MLflow tracking store of facefuse: its schema, access to it, and the sweep's writer.

- ``schema``: every tag name, run kind, filter string and metric-key rule (the public interface
  that selection, reports and anyone's own queries read; see docs/architecture.md).
- ``store``: tracking URI resolution and redaction, opening a client with clear errors,
  experiment lookup and paged run search.
- ``queue``: the durable FIFO of write operations that survives store outages (no MLflow).
- ``writer``: the typed MLflow writer that executes those operations.
- ``names``, ``inputs``: run names and the experiment kind that make the MLflow UI read well;
  benchmarks as dataset inputs. (Best checkpoints as models: ``facefuse.train.export``; the
  parent-run summary and ROC pictures: ``facefuse.sweep_report``.)

Importing this package is cheap: mlflow is imported only when a client is opened.
"""
