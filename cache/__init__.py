"""r2.cache: the on-disk feature cache (sharded HDF5). Imports numpy and h5py only."""
