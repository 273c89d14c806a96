import os

# Same reason as in train_al.py: spinning OpenMP threads crawl when loader workers or a second
# process share the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
