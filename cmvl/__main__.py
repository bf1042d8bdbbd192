from cmvl.cli.main import main

main()
