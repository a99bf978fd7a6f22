from splitdnn.cli import main

if __name__ == "__main__":  # not when a spawned process (a cooperative tier's worker) imports this as __mp_main__
    main()
