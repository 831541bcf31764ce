"""Training plumbing shared by the commands: atomic checkpoints and exact resume, checkpoint
compatibility, run folders, provenance, independent runs (joblib / Dask), the console and the one
error guard of every command."""
