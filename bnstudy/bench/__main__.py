from bnstudy.bench import main

main()
