"""smarter-device-manager: a Kubernetes device plugin for plain Linux device nodes.

Data flows one way (see docs/architecture in README):
config (rules) -> discovery (desired resources) -> reconcile (running plugins)
-> plugin (gRPC per resource) -> registrar (kubelet). The watcher feeds the
reconcile loop with "something changed" events; nothing polls.
"""

__version__ = "2.2.0"
