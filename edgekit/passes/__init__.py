"""Compression passes: nn.Module in, nn.Module out, each records what it did."""
