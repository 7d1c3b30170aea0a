"""Device-plugin mode: the daemon as a kubelet device plugin (``deviceplugin/v1beta1``).

``cli``       the ``serve`` and ``cdi`` subcommands: options and start-up
``daemon``    the loop wiring the watcher, discovery, reconcile and the registrar
``reconcile`` inventory -> one plugin server per resource, told to the kubelet
``plugin``    the DevicePlugin service of one resource (ListAndWatch, Allocate) and its server
``registrar`` registration with the kubelet, one retrying task per resource
``cdisync``   ``--cdi on``: keeps the node's CDI spec equal to what is served

It builds on the shared core (config, discovery, sysfs, handover, cdi, watch, grpcserver, ...)
and imports nothing of DRA mode (tests/test_layout.py checks the import rules).
"""
