"""xfer: moves container images between registries, the local store and archives."""
