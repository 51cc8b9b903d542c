"""The Zarr store of captured traces: schema, writer and reader."""
