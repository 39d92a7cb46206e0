from transship.cli import main

main()
