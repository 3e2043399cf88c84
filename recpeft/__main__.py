from recpeft.cli.app import main

main()
