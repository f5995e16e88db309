import socket, base64, time, sys
def one(user, pw, src="127.0.0.1", port=22404):
    s=socket.socket(); s.bind((src,0)); s.connect(("127.0.0.1",port)); s.settimeout(5)
    a=base64.b64encode(f"{user}:{pw}".encode())
    s.sendall(b"GET http://127.0.0.1:22401/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic "+a+b"\r\n\r\n")
    d=b""
    while b"\r\n\r\n" not in d:
        x=s.recv(65536)
        if not x: break
        d+=x
    s.close()
    head=d.split(b"\r\n\r\n")[0].split(b"\r\n")
    ra=[h for h in head if h.lower().startswith(b"retry-after")]
    return head[0].split(b" ")[1].decode()+(" "+ra[0].decode() if ra else "")
