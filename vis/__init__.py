"""Pictures of what the walk learned: ``draw`` makes them (numpy in, RGB images out), ``sinks`` sends them to PNG
files, visdom and wandb (train.py --visualize, test.py --visdom / --pca-vis)."""
