"""Model Zoo folders: publish a trained model, verify a folder, load one for inference.

`from runner.zoo import load, ZooModel, ZooError`; publish and verify live in
runner.zoo.publish / runner.zoo.verify and behind `python -m runner.zoo`.
"""
from runner.zoo.frontmatter import ZooError
from runner.zoo.load import ZooModel, load  # the function shadows its module's name

__all__ = ["ZooError", "ZooModel", "load"]
