from splitdnn.cli import main

main()
