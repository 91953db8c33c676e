"""Encrypted journal: AES-GCM journal value codec, rotating keys; Restate stores ciphertext only."""
