"""Tests of mkosi-initrd-builder; tests.support holds the shared helpers."""
