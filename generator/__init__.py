"""Render the paper's CNN/CNDS nets as Caffe prototxt from Jinja templates."""
