"""The I2CR stages, one module each; every node is a plain function of ``(state, runtime)``."""
