"""The relaying dispatcher behind ``twistd harp-proxy``: job store, hosts registry, relay."""
