"""The fleet simulator (its own issue): device physics, faults, ground truth."""
