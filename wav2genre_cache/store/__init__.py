"""The files stages meet through: the HDF5 cache, Parquet shards, bundles."""
