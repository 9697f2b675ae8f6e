"""Neuron explanation workbench: collect activations, explain neurons, score and compare explanations."""

__version__ = "0.1.0"
