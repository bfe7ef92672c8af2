"""MMSeg / MMDet plug-ins for the efficient-encoder methods, one file per method."""
