"""End-to-end workflows: `make run`'s driver (main_job.py), the product flowing as it would in koji."""
