"""WHM nodes: health probing, primary election and failover for WHMCluster and WHMNode."""
