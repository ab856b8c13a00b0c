"""Episode stores in and out of the dataset formats the field shares."""
