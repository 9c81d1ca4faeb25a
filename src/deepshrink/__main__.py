from deepshrink.cli import main

main()
