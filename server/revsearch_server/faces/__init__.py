"""Face detection and alignment for face crop modes."""
