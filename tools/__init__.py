"""Model loaders, the knowledge base and the image tools used by the I2CR nodes."""
