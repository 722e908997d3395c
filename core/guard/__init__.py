"""What the model has not seen: domain checks from DICOM metadata (domain.py) and an out-of-distribution score
per modality learned from the training data (ood.py)."""
