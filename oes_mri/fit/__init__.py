"""The untrained fit engine: the k-space problem, one step loop with its record and stopping rules, the fit settings, the fast path and the hybrid penalty."""
