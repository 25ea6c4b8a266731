"""dtxn.bench: the benchmark suite behind `dtxn bench`."""
