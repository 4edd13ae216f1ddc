"""Training (installed as ``lenet_export.training``): the loop, plots and the speed benchmark."""
