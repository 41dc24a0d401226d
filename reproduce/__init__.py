"""The paper's claims reproduced with the project's own tools: `make reproduce`."""
