from nnreg.cli import main

main()
