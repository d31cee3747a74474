"""tfe_lite: encrypted and private machine learning for TensorFlow and Keras."""
