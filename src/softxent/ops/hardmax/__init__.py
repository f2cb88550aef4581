"""hardmax and one_hot: the one-hot of the first maximum (ONNX Hardmax), softmax's limit as T -> 0.

Piecewise constant, so it carries no gradient; a row holding NaN gives NaN. Start with numpy.py.
"""
