"""rayhistory: the Ray Dashboard for dead RayClusters on Kubernetes.

Parts: rayhistory.collector (sidecar), rayhistory.server (history API + UI), rayhistory.operator (Kopf).
Shared core: layout (every storage key), store (fsspec), index (session index), events (Ray event model).
"""

__version__ = "0.1.0"
