import socket, base64, time, statistics
def t(user,pw):
    s=socket.create_connection(("127.0.0.1",22405)); s.settimeout(5)
    r=b"GET http://127.0.0.1:22401/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic "+base64.b64encode(f"{user}:{pw}".encode())+b"\r\n\r\n"
    t0=time.perf_counter(); s.sendall(r); d=s.recv(4096); dt=time.perf_counter()-t0; s.close(); return dt*1000, d[9:12]
for u in ["alice","bob","carol","locked","dave","nobody1","nobody2","nobody3","nobody4","nobody5","nobody6","x"*200]:
    ts=[t(u,"wrong-%d"%i)[0] for i in range(7)]
    print(f"{u[:12]:12s} median {statistics.median(ts):7.2f} ms  min {min(ts):7.2f}")
