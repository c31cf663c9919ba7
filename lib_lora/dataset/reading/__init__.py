"""Reading the files a dataset listing paired: `pairs` (in this process, or mostly by a helper process: `helper`
is the parent's side of it, `worker` the helper itself, standard library only)."""
