"""Forward-operator layer: FFTs, sampling masks, coil sensitivities, SENSE operators."""
