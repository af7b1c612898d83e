"""Data layer: attribute schema, CelebA/CelebA-Dialog readers, the image cache, synthetic faces, loaders."""
