"""DRA mode: the daemon as a Dynamic Resource Allocation (resource.k8s.io/v1) driver.

``devices``  inventory + sysfs -> DRA devices: names, typed attributes, CDI edits
``slices``   devices -> ResourceSlice specs and the fewest API writes (pure)
``publisher`` keeps the API server's slices equal to ours: list, watch, write, retry
``node``     the kubelet's DRAPlugin service: prepare/unprepare with a checkpoint
``registration`` the plugin watcher's Registration service and the unix-socket servers
``kube``     the API client: HTTP/1.1 + JSON over asyncio and ssl
``daemon``   the loop wiring the watcher, discovery and the above

Only ``smarter-device-manager dra`` imports this package: device-plugin mode never loads it,
its API client or ``ssl`` (tests/test_dra_units.py checks ``sys.modules``).
"""
