"""The Ray executor's tests (a package so that its cluster and runtimes are package-scoped:
they stop when the last test here has run, not at the end of the whole session)."""
