"""The demo: example contracts and services, and ``streamguard demo`` (``demo.run``).

The package itself imports nothing, so a service that imports its contracts or its
billing service (as ``deploy/`` runs it) does not load the embedded broker and the
demo's sending and reporting code with them.
"""
