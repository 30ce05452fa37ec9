"""The command lines: ``fastmri-growth-{train,eval,plot,synth}`` and the demo.

Each module holds one command's parser and its ``main``; the work itself is
done by the library packages (``models``, ``growth``, ``pl_modules``,
``data``, ``evaluation``).
"""
