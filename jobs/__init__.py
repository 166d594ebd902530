"""Code that runs on the Ray cluster as a job: the pipeline driver and Ray Train loops."""
