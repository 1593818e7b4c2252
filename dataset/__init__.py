"""The data: the lab's record format (the contract every stage reads), the generated default
data, the split by patient, and Sunnybrook DICOM + contour reading. No TensorFlow at import."""
