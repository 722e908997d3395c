"""Data: readers for medical files, the dataset spec and manifest, and the embedded cohort."""
