"""``qai-jobs bench``: throughput and latency figures beside a baseline measured in the same run."""
